"""MRI (Model Reasoning Importance): static tensor statistics, layer probes, pair fusion, health check."""
