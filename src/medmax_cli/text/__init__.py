"""Chameleon vocabulary layout, text tokenizer access, image-code <-> token-id mapping."""

from medmax_cli.text.vocab import ChameleonVocab, image_code_of, image_token_name

__all__ = ["ChameleonVocab", "image_code_of", "image_token_name"]
