using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Http;

/// <summary>
/// Clients that start a large upload to POST /echo and close in the middle of it (WindowsCheck's
/// CloseMidUpload breaker). Kestrel takes such a close for what it is, the client going away, only if it
/// learns of it (ConnectionClosed) before the failed read of the request body reaches it; otherwise it logs
/// the reset as the application's error and then fails to drain the body, both at Error.
/// </summary>
public sealed class CloseMidUploadTests
{
    private const int Clients = 200;

    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    public enum Close
    {
        /// <summary>A zero linger: an RST right after the bytes sent.</summary>
        Reset,

        /// <summary>A FIN, then the close with the echo unread, which the kernel turns into an RST.</summary>
        Fin,
    }

    [Theory(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    [InlineData(Close.Reset)]
    [InlineData(Close.Fin)]
    public Task On_io_uring_Kestrel_logs_no_error_for_clients_that_close_mid_upload(Close close)
        => AssertNoKestrelErrorsAsync(WinsockEngine.IoUring, close);

    [Theory]
    [InlineData(Close.Reset)]
    [InlineData(Close.Fin)]
    public Task On_the_sockets_engine_Kestrel_logs_no_error_for_clients_that_close_mid_upload(Close close)
        => AssertNoKestrelErrorsAsync(WinsockEngine.Sockets, close);

    private static async Task AssertNoKestrelErrorsAsync(WinsockEngine engine, Close close)
    {
        var log = new ErrorLog();
        await using (var server = await SampleServer.StartAsync(
            configure: options => options.Engine = engine,
            configureBuilder: builder => builder.Logging.AddProvider(log)))
        {
            var endPoint = new IPEndPoint(IPAddress.Loopback, server.Port);
            var head = Encoding.ASCII.GetBytes("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n");
            var body = new byte[256 * 1024];
            using var gate = new SemaphoreSlim(10);
            await Task.WhenAll(Enumerable.Range(0, Clients).Select(async _ =>
            {
                await gate.WaitAsync(TestContext.Current.CancellationToken);
                try
                {
                    using var socket = await RawClient.ConnectAsync(endPoint);
                    await socket.SendAsync(head, SocketFlags.None, TestContext.Current.CancellationToken);
                    await socket.SendAsync(body, SocketFlags.None, TestContext.Current.CancellationToken);
                    if (close == Close.Reset)
                    {
                        socket.LingerState = new LingerOption(true, 0);
                    }
                    else
                    {
                        socket.Shutdown(SocketShutdown.Send);
                    }
                }
                finally
                {
                    gate.Release();
                }
            }));

            // Every client accepted, or (where a connection reset in the backlog is dropped before its accept,
            // as Windows does and Wine does after it) no more coming for a second.
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            long accepted = -1;
            for (var quiet = 0; server.Counters.ConnectionsAccepted < Clients && quiet < 10 && DateTime.UtcNow < until;)
            {
                await Task.Delay(100, TestContext.Current.CancellationToken);
                var now = server.Counters.ConnectionsAccepted;
                quiet = now == accepted ? quiet + 1 : 0;
                accepted = now;
            }

            if (!WinePlatform.IsWine && !OperatingSystem.IsWindows())
            {
                Assert.True(server.Counters.ConnectionsAccepted >= Clients, Eventually.Describe(server.Counters));
            }
        }

        // The server's stop waited for every request to end, so everything Kestrel logs about them is in.
        Assert.True(log.Entries.IsEmpty, $"{log.Entries.Count} errors in {Clients} clients:\n" + string.Join("\n", log.Entries.GroupBy(e => e).Select(g => $"{g.Count()} x {g.Key}")));
    }

    /// <summary>What Kestrel logs at Error (event name and exception type), from any category.</summary>
    private sealed class ErrorLog : ILoggerProvider
    {
        public ConcurrentQueue<string> Entries { get; } = new();

        public ILogger CreateLogger(string categoryName) => new Logger(Entries);

        public void Dispose()
        {
        }

        private sealed class Logger(ConcurrentQueue<string> entries) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                if (logLevel >= LogLevel.Error)
                {
                    entries.Enqueue($"{eventId.Name}: {exception?.GetType().Name} {exception?.Message}");
                }
            }
        }
    }
}
