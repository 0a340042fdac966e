"""Hydra search-path plugin: makes initspec's shipped configs a config source.

After ``pip install initspec`` any Hydra app can use the ``initspec`` group
(presets: ``defaults: [initspec: gpt2]`` or ``initspec=gpt2`` on the command
line) and the example ``model`` configs. Hydra imports every module under
``hydra_plugins`` at startup, so this one imports neither torch nor initspec:
the configs live in the torch-free package ``initspec_configs`` (the repo's
``configs/`` directory). Hydra 1.4 also finds the class through the
``hydra.plugins`` entry point declared in pyproject.toml.
"""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class InitspecSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="initspec", path="pkg://initspec_configs")
