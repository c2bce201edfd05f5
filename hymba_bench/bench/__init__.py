"""Efficiency measurements: timing, memory, throughput, the sweep over context, kernel and
decode profiles, and the regression check against a baseline."""
