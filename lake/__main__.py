from lake.cli.main import main

main()
