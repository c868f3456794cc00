# The bundled VQA items are source records: check them against the schema.
medmax validate examples/sample/vqa.jsonl
