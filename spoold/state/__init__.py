"""spoold's bookkeeping beside the data flow: the runs index (what each run is known as),
the ledger (accepted = forwarded + queued + dead-lettered), the start-up repair between
the spool and the index, and opening and checking the local files."""
