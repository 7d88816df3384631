from posecal.cli import console_main

console_main()
