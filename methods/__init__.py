"""Parameter editors and trainable components (gate training now; ROME/MEMIT/AlphaEdit,
GRACE and the prompt encoder land here)."""
