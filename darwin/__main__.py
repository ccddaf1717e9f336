from darwin.cli import main

main()
