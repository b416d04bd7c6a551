"""The steps' engines: the heavy machinery a step drives, none of which knows about steps or executors.

minhash (signatures, LSH, exact verification), spill (hash partitions on disk), packs (benchmark packs for
decontamination), benchspec (which benchmark files a recipe names), embed (the cached encoder), vectorsearch
(top-k over a memmapped pool)."""
