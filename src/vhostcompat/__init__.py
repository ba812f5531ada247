"""vhostcompat: named vhost-user compatibility versions for live migration.

See DESIGN.md in the shared folder and the README for the map of the modules.
"""

__version__ = "0.1.0"
