"""Installs `transformers_overlay.pth` next to the package, in regular and in editable (PEP 660) installs.

The `.pth` file is what makes the overlay active in every interpreter without an import; everything else about the
package is declared in setup.cfg.
"""

from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build


PTH_FILE = Path(__file__).parent / "src" / "transformers_overlay.pth"


class build_pth(Command):
    """Copies the activation `.pth` into the root of the build, from where it is installed into site-packages."""

    description = "install the transformers-overlay activation .pth"
    user_options = []

    def initialize_options(self):
        self.build_lib = None
        self.editable_mode = False  # set by setuptools' editable_wheel on every build sub-command

    def finalize_options(self):
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self):
        # An editable wheel is assembled from install_lib's directory, not from build_lib.
        target = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        self.mkpath(target)
        self.copy_file(str(PTH_FILE), str(Path(target) / PTH_FILE.name))

    def get_outputs(self):
        return [str(Path(self.build_lib) / PTH_FILE.name)]

    def get_output_mapping(self):
        return {}


build.sub_commands.append(("build_pth", None))
setup(cmdclass={"build_pth": build_pth})
