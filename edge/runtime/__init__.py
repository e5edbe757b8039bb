"""The runtime: context estimation, scheduling and the loop that joins sensors, encoders and the LLM."""
