module executorplugins.example/hostshim

go 1.19
