"""The analyses of measured curves and grids: curve shapes (Li, Li, Zhan 2024) and phases
(Yang et al. 2021)."""
