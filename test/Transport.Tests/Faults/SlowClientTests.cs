using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelApp;
using Microsoft.AspNetCore.Hosting;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Faults;

/// <summary>
/// Clients that hold a connection without finishing anything: Kestrel's own limits end them (its heartbeat
/// checks once a second, hence the slack), the transport carries that end to the wire, and everyone else
/// is served meanwhile.
/// </summary>
public sealed class SlowClientTests
{
    private static readonly TimeSpan EndBound = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Slowloris_that_trickles_headers_forever_is_cut_off_by_RequestHeadersTimeout_while_others_are_served()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var server = await SampleServer.StartAsync(configureBuilder: builder =>
            builder.WebHost.ConfigureKestrel(k => k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(1)));
        using var normal = server.CreateKeepAliveClient();
        normal.Timeout = Bounded;

        using var slow = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port));
        await RawClient.SendAsync(slow, "GET /plaintext HTTP/1.1\r\nHost: slow\r\nX-Slow: ");
        var started = Stopwatch.StartNew();
        var ended = ReadToEndOrResetAsync(slow, EndBound);

        // One header byte every 200 ms, never the end of the headers; a normal request between bytes.
        var trickled = 0;
        while (!ended.IsCompleted && started.Elapsed < EndBound)
        {
            try
            {
                await slow.SendAsync("a"u8.ToArray(), SocketFlags.None, ct);
                trickled++;
            }
            catch (SocketException)
            {
                // The server has already given up on it; the read reports how.
            }

            Assert.Equal(SampleHost.PlaintextBody, await normal.GetByteArrayAsync("/plaintext", ct));
            await Task.WhenAny(ended, Task.Delay(200, ct));
        }

        var (received, reset) = await ended;
        TestContext.Current.SendDiagnosticMessage(
            $"slowloris: ended after {started.Elapsed.TotalSeconds:F1} s, {trickled} bytes trickled, reset={reset}, got '{received.Split("\r\n")[0]}'; {Eventually.Describe(server.Counters)}");
        // Still sending header bytes well after the timeout's start: trickling did not keep it alive.
        Assert.True(trickled >= 3, $"only {trickled} header bytes were sent before the end");
        // If anything came back it is Kestrel's timeout response, never the page.
        Assert.DoesNotContain("Hello, World!", received, StringComparison.Ordinal);
        Assert.True(received.Length == 0 || received.StartsWith("HTTP/1.1 408", StringComparison.Ordinal), received);

        // And after: the server still serves, fresh connections and the kept-alive one.
        using var fresh = server.CreateClosingClient();
        Assert.Equal(SampleHost.PlaintextBody, await fresh.GetByteArrayAsync("/plaintext", ct));
        Assert.Equal(SampleHost.PlaintextBody, await normal.GetByteArrayAsync("/plaintext", ct));
        // Kestrel answered the timeout and completed the connection: a FIN, not an abort.
        Assert.Equal(0, server.Counters.AbortiveCloses);
    }

    [Fact]
    public async Task Idle_keep_alive_connection_is_closed_gracefully_by_KeepAliveTimeout()
    {
        await using var server = await SampleServer.StartAsync(configureBuilder: builder =>
            builder.WebHost.ConfigureKestrel(k => k.Limits.KeepAliveTimeout = TimeSpan.FromSeconds(1)));
        var counters = server.Counters;

        using var client = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port));
        await RawClient.SendAsync(client, "GET /plaintext HTTP/1.1\r\nHost: idle\r\n\r\n");
        var (response, reset) = await ReadUntilAsync(client, "\r\n\r\nHello, World!");
        Assert.False(reset);
        Assert.StartsWith("HTTP/1.1 200 ", response, StringComparison.Ordinal);
        Assert.DoesNotContain("Connection: close", response, StringComparison.OrdinalIgnoreCase);
        var idleSince = Stopwatch.StartNew();

        // Now idle: the server ends it with a FIN (a read of 0), not an RST (which would throw).
        var rest = await RawClient.ReadToFinAsync(client, EndBound);
        Assert.Empty(rest);
        // Not before the timeout: it was the keep-alive limit that ended it, not the request.
        Assert.True(idleSince.Elapsed >= TimeSpan.FromMilliseconds(900), $"closed after only {idleSince.Elapsed.TotalMilliseconds:F0} ms idle");
        client.Shutdown(SocketShutdown.Send);

        Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses == 1 && counters.PendingDisconnects == 0, Bounded), Eventually.Describe(counters));
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.Equal(0, counters.ConnectionResets);
        Assert.Equal(0, counters.DrainTimeouts);
        Assert.Equal(1, counters.ConnectionsAccepted);
    }

    /// <summary>Reads until the connection ends: the text, and whether it ended with a reset rather than a FIN.</summary>
    private static async Task<(string Text, bool Reset)> ReadToEndOrResetAsync(Socket socket, TimeSpan timeout)
        => await ReadUntilAsync(socket, until: null, timeout);

    private static async Task<(string Text, bool Reset)> ReadUntilAsync(Socket socket, string? until, TimeSpan? timeout = null)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(timeout ?? Bounded);
        var received = new StringBuilder();
        var buffer = new byte[4096];
        try
        {
            while (until is null || !received.ToString().EndsWith(until, StringComparison.Ordinal))
            {
                var read = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                if (read == 0)
                {
                    break;
                }

                received.Append(Encoding.ASCII.GetString(buffer, 0, read));
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted)
        {
            return (received.ToString(), true);
        }

        return (received.ToString(), false);
    }
}
