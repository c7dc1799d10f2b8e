using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

/// <summary>
/// A client that half-closes (FIN) while its request is still being served. Kestrel treats the FIN as the
/// client going away and calls ConnectionContext.Abort with a null reason (KestrelServerOptions.FinOnError
/// is off by default), which its own Sockets transport takes as "close". The Winsock transport must take it too.
/// </summary>
public sealed class HalfCloseTests
{
    [Theory]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task A_client_FIN_in_the_middle_of_a_request_causes_no_transport_error(TransportKind transport)
    {
        var errors = new ErrorLog();
        await using var server = await SampleServer.StartAsync(transport, configureBuilder: b => b.Logging.AddProvider(errors));

        using (var socket = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port)))
        {
            await RawClient.SendAsync(socket, "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n0123456789");
            socket.Shutdown(SocketShutdown.Send);
            try
            {
                // Whatever the server answers, the connection ends (bounded): with a FIN, or a reset.
                await RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(10));
            }
            catch (SocketException)
            {
                // Kestrel's own transport may reset too; how it ends is not what this test checks.
            }
        }

        // The server still serves; by now the aborted connection has gone through its ConnectionClosed callbacks.
        using var client = server.CreateClosingClient();
        Assert.Equal(KestrelApp.SampleHost.PlaintextBody, await client.GetByteArrayAsync("/plaintext", TestContext.Current.CancellationToken));
        for (var i = 0; i < 20 && errors.IsEmpty; i++)
        {
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }

        Assert.True(errors.IsEmpty, string.Join(Environment.NewLine, errors));
    }

    /// <summary>Collects what the host logs at Error or above.</summary>
    private sealed class ErrorLog : ConcurrentQueue<string>, ILoggerProvider, ILogger
    {
        public ILogger CreateLogger(string categoryName) => this;

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                Enqueue($"{logLevel} {eventId.Name}: {formatter(state, exception)} {exception}");
            }
        }

        public void Dispose()
        {
        }
    }
}
