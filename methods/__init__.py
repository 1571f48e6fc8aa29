"""Parameter editors and trainable components: FT-L, ROME, MEMIT and AlphaEdit, their
second-moment statistics, the consolidation core, and gate training."""
