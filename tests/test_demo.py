"""The demo's report follows the MPO config that ran (dominant language, beta), not hard-coded values."""
import json
from pathlib import Path

from mpo_dist.config import load_config, to_dict
from mpo_dist.train.demo import gap_table, mpo_settings

DEMO_MPO = Path(__file__).resolve().parents[1] / "configs" / "demo_mpo.yaml"


def test_settings_come_from_the_stored_run_config(tmp_path):
    config = load_config(DEMO_MPO, ["model.path=/models/placeholder", "data.dominant_language=zh", "loss.mpo.beta=1.5"])
    (tmp_path / "config.json").write_text(json.dumps(to_dict(config)))  # what the trainer stores in its run directory
    assert mpo_settings(tmp_path) == ("zh", 1.5)


def test_gap_table_target_is_the_dominant_gap_over_beta():
    # dominant zh gap 0.6, beta 1.5 -> target 0.4; en moves from 0.1 to 0.3 (closer), sw from 0.5 to 0.9 (farther)
    table, all_moved = gap_table({"zh": 0.6, "en": 0.1, "sw": 0.5}, {"zh": 0.6, "en": 0.3, "sw": 0.9}, "zh", 1.5)
    assert "| zh (dominant) | +0.6000 | +0.6000 | +0.4000 | |" in table
    assert "| en | +0.1000 | +0.3000 | +0.4000 | yes |" in table
    assert "| sw | +0.5000 | +0.9000 | +0.4000 | NO |" in table
    assert not all_moved
