from totes_cli.app import main

main()
