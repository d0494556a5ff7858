"""Shipped experiment configs (``*.yaml``, one per seed figure or table) and the sweep runner.

``pyro-decomp list`` names each experiment; ``pyro-decomp run <id>`` and ``pyro-decomp sweep <id>``
run them. The YAML files live next to this module so that they are installed with the package.
"""
