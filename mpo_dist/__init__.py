"""mpo-dist: distributed multilingual safety alignment on DeepSpeed ZeRO-3."""
