"""The roles and the groups of roles that share a right, in one place.

A user or API key has one role; every route declares its group with `Allow(*GROUP)`
(routes/access.py), and the privacy rules (phones, resident counts) use the same groups.
"""

ROLES = ("viewer", "worker", "dispatcher", "analyst", "admin", "department")

EVERYONE = ROLES
# Report incidents and act on them (workers only on what is assigned to them).
REPORTERS = ("worker", "dispatcher", "admin")
# The town centre's desk: move incidents through the lifecycle, call people (full phone numbers),
# see resident counts of door plates.
STAFF = ("dispatcher", "admin")
# Analyses and bulk reads: hotspots, density, OGC API, batch lookups, incident and door-plate exports.
ANALYSTS = ("analyst", "dispatcher", "admin")
# Save a hotspot layer for others to read.
PUBLISHERS = ("analyst", "admin")
# Users, keys, the audit trail and the people layers.
ADMINS = ("admin",)
# A department (部门) summoned by a whistle: sees the incidents that summoned it, reports in and
# reports back (its account names the department: department_code).
DEPARTMENTS = ("department",)
# Who may act on incidents at all; the lifecycle table (lifecycle.TRANSITIONS) says which actions.
ACTORS = (*REPORTERS, *DEPARTMENTS)
# The officials' scoreboard (考核) and its dashboard: officials (viewers) and the bulk readers of
# incidents; a department its own figures. Not workers: it ranks their peers.
SCOREBOARD = ("viewer", *ANALYSTS, *DEPARTMENTS)
