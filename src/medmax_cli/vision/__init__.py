"""Images <-> VQ codes: MedMax/Anole preprocessing, the VQ-GAN encoder and decoder, the stages.

- `preprocess`: the exact Chameleon/Anole pixel transform (alpha onto white, shortest side, crop).
- `spec`: the VQ configuration of a model directory (sizes, grid, codebook).
- `weights`: reading the VQ tensors of a model directory without building the language model.
- `encoder` / `decoder`: image -> codes (transformers' ChameleonVQVAE) and codes -> image (our own
  taming-transformers decoder, loading both published key layouts).
- `fingerprint`: which codebook made a list of tokens (`images[i].vq`).
- `cache`: on-disk token cache keyed by (image sha256, VQ fingerprint).
- `tokenize` / `detokenize`: the stages behind `medmax tokenize-images` and `medmax detokenize`.

Everything that needs torch imports it inside; `import medmax_cli.vision` is cheap.
"""
