"""Judging what the method reads: coherence verdicts (offline and LLM graders), the steering alpha search
they drive, relevance to the finetuning data, and steering similarity."""
