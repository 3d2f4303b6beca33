module toolforge-admission/bench/goref

go 1.22
