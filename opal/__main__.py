from opal._launch import main

main()
