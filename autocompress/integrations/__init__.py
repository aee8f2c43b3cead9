"""Adapters that let other training frameworks drive the core's fine-tune stages (``train_fn=``)."""
