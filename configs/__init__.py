"""The presets (YAML). Installed as the package `vipo_configs`, so `vipo build` finds its default config
after `pip install .` or from a wheel; a checkout reads them here (cli.preset)."""
