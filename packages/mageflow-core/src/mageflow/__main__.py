from mageflow.cli import main

main()
