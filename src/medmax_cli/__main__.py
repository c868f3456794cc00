from medmax_cli.cli import main

main()
