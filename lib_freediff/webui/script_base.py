"""The base of the extension's AlwaysOn scripts.

Script files must reference it as ``script_base.FeatureScript``: the WebUI registers every Script
subclass found in a script module's namespace, so importing the class by name would register it too.
"""

from modules import scripts


class FeatureScript(scripts.Script):
    """An AlwaysOn panel titled by its feature (the title is also its API ``alwayson_scripts`` key)."""

    feature: str = ""

    def title(self):
        return self.feature

    def show(self, is_img2img):
        return scripts.AlwaysVisible
