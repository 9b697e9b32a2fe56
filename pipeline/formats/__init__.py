"""Reading vipo's input formats, once for every reader (verify, the audit, the trainer).

* `keys`: how a tar member name splits into (sample key, suffix): webdataset's rule.
* `shards`: WebDataset shard tars by their headers, members as bytes or offsets, never decoded.
* `parquet`: parquet a row group at a time, in bounded batches.
* `pickapic`: one Pick-a-Pic v2 comparison out of a parquet batch.
* `bounded`: the caps on untrusted input (bytes, lines, JSON depth) and the reads that keep them.

Readers that split names or read files their own way drift apart (a sample one reader sees and
another does not); keeping one copy here keeps them agreeing with each other and with webdataset.
"""
