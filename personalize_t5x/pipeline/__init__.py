"""The data pipeline: corpus readers, the paper's examples, retrieval and ranking, the Beam features stage."""
