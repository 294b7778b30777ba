"""llama.cpp as a target: llama-bench, the ctest subset, the KLD gate, the synthetic model, the roofline facts."""
