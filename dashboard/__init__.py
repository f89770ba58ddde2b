"""What people see: the live dashboard (`totes dashboard`) and the shareable report
(`totes report`), both drawn from the same views (views.py) and chart definitions (charts.py)."""
