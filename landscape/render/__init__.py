"""Figures drawn from results files alone: matplotlib (png/svg/pdf) and plotly (html)."""
