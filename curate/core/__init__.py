"""curate's lowest layer: helpers every other package imports, and which import none of them.

``images`` (PIL <-> tensor, decoding stored bytes), ``neighbours`` (exact and approximate
nearest-neighbour search on faiss), ``text`` (frozen caption encoders and the one lookup of a
model's encoder), ``weights`` (names of the pretrained weights curate defaults to). Modules here
import only ``curate.errors`` and ``curate.seeding`` from curate, and keep heavy third-party
imports (torch, PIL, faiss, transformers) inside functions where a light caller may import them.
"""
