"""The checkpoint store: its seam (base.py), Redis (redis.py) with its Lua scripts, announcements and repartitioning."""
