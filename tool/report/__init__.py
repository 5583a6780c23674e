"""Reporting, from the files a run wrote: tables (one run's, every run of a dataset beside the
published figures), export into results/, figures, seed ensembles, and the class-leakage
diagnostic."""
