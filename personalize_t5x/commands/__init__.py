"""One module per `personalize-t5x` command; see personalize_t5x/cli.py."""
