from medops.cli import app

app()
