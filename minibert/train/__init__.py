"""Fine-tuning without torch: layers' backward, AdamW, the loop, classifiers, checkpoints transformers loads."""
