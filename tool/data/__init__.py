"""The data: the dataset registry and processed format (datasets), raw-file readers (readers),
finding and preparing raw files and tuning splits (prepare), folders of your own images (folder),
and the two protocols with the validation hold-out (protocol)."""
