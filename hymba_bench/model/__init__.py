"""The model layer: mixers, blocks, the language model, its inference cache and generation."""
