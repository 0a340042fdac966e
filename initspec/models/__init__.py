"""Small reference models: the seed notebook's networks and models that follow
the parameter names of the implementations the presets come from."""
