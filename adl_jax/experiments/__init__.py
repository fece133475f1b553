"""Whole experiments built on the method: the audit, causal ablation, sweeps, the agent, the demo, and the
memory planner."""
