from opal.cli import main

main()
