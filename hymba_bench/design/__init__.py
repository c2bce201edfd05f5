"""The design layer: a design as data (config, layer plan), the registry of designs and size
profiles, and the attention masks the plan implies. Imports no torch kernels."""
