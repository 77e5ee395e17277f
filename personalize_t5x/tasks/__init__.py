"""The task side: prompts, the SeqIO registry, vocabularies, metrics and significance."""
