using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Faults;

/// <summary>
/// A logging provider that throws is the application's code running inside the transport's continuations:
/// it must cost the one connection it was logging for, not a ring with every connection on it (io_uring),
/// not the process (an exception on a thread pool thread), and not the connection's end.
/// </summary>
public sealed class ThrowingLoggerTests
{
    [Fact]
    public async Task A_logger_that_throws_while_a_reset_is_logged_ends_that_connection_and_nothing_else()
    {
        var logger = new ThrowingLog("ConnectionReset");
        var ended = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var served = 0;
        await using var server = await ConnectionServer.StartAsync(
            TransportKind.Winsock,
            async context =>
            {
                var input = context.Transport.Input;
                ReadResult first;
                try
                {
                    first = await input.ReadAsync();
                }
                catch (Exception ex)
                {
                    // Only the reset connection can end before its first byte is read: on a loaded machine
                    // (the suite under Wine) its reset can come before the application's first read, and
                    // its input then ends at that read.
                    ended.TrySetResult(ex);
                    return;
                }

                if (first.Buffer.IsEmpty)
                {
                    ended.TrySetResult(null);
                    return;
                }

                var resetByClient = first.Buffer.FirstSpan[0] == (byte)'r';
                input.AdvanceTo(first.Buffer.End);
                if (resetByClient)
                {
                    // The connection the client resets: its input must end, with the reset or an abort.
                    try
                    {
                        while (true)
                        {
                            var result = await input.ReadAsync();
                            input.AdvanceTo(result.Buffer.End);
                            if (result.IsCompleted)
                            {
                                break;
                            }
                        }

                        ended.TrySetResult(null);
                    }
                    catch (Exception ex)
                    {
                        ended.TrySetResult(ex);
                    }

                    return;
                }

                Interlocked.Increment(ref served);
                await context.Transport.Output.WriteAsync("ok"u8.ToArray());
            },
            configureBuilder: builder => builder.Logging.AddProvider(logger).AddFilter<ThrowingLog>("Transport.Winsock", LogLevel.Trace));

        using (var reset = await RawClient.ConnectAsync(server.EndPoint))
        {
            await RawClient.SendAsync(reset, "r");
            await Task.Delay(100, TestContext.Current.CancellationToken);
            RawClient.Reset(reset);
        }

        var finished = await Task.WhenAny(ended.Task, Task.Delay(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.True(finished == ended.Task, $"the reset connection's input never ended (the logger threw {logger.Thrown} time(s))");
        // The transport logs off the ring thread (EngineThreadLogger hops to the thread pool), so the
        // provider may be asked only after the input has ended.
        Assert.True(
            await Eventually.TrueAsync(() => logger.Thrown > 0, TimeSpan.FromSeconds(10)),
            $"the logger was never asked to log the reset (input ended with {(await ended.Task)?.GetType().Name ?? "completion"}; resets counted {server.Counters!.ConnectionResets})");
        TestContext.Current.SendDiagnosticMessage($"the reset connection's input ended with {(await ended.Task)?.GetType().Name ?? "completion"}; the logger threw {logger.Thrown} time(s)");

        // Every ring, and the listener, still serve.
        for (var i = 0; i < 20; i++)
        {
            using var client = await RawClient.ConnectAsync(server.EndPoint);
            await RawClient.SendAsync(client, "x");
            var buffer = new byte[2];
            var read = 0;
            while (read < 2)
            {
                var n = await client.ReceiveAsync(buffer.AsMemory(read), TestContext.Current.CancellationToken);
                Assert.True(n > 0, $"connection {i} closed before its answer");
                read += n;
            }
        }

        Assert.Equal(20, Volatile.Read(ref served));
        Assert.Equal(1, server.Counters!.ConnectionResets);
    }

    /// <summary>Throws from Log for one event of the transport's (the failure a user's provider can have).</summary>
    private sealed class ThrowingLog(string eventName) : ILoggerProvider
    {
        private int _thrown;

        public int Thrown => Volatile.Read(ref _thrown);

        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName == "Transport.Winsock");

        public void Dispose()
        {
        }

        private sealed class Logger(ThrowingLog owner, bool transport) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => transport;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                if (transport && eventId.Name == owner._eventName)
                {
                    Interlocked.Increment(ref owner._thrown);
                    throw new InvalidOperationException($"This logging provider fails on {eventId.Name}.");
                }
            }
        }

        private readonly string _eventName = eventName;
    }
}
