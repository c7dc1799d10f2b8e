using System.Net;
using System.Net.Sockets;
using System.Text;
using KestrelApp;

namespace Transport.Tests.Infrastructure;

/// <summary>
/// <c>Connection: close</c> requests for the sample's /plaintext over raw sockets, where the client decides
/// who closes first: what decides, at the server, whether a socket can be recycled.
/// </summary>
public static class RawHttp
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private static readonly byte[] Request = Encoding.ASCII.GetBytes("GET /plaintext HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");

    /// <summary>
    /// <paramref name="requests"/> requests in a row, each on a new connection. With
    /// <paramref name="clientClosesFirst"/> the client closes as soon as it has the whole body (the server
    /// must hold its FIN back for that: a deferred FIN); otherwise it waits for the server's FIN first.
    /// </summary>
    public static async Task GetPlaintextAsync(IPEndPoint server, int requests, bool clientClosesFirst)
    {
        for (var i = 0; i < requests; i++)
        {
            using var socket = await RawClient.ConnectAsync(server);
            await SendRequestAndReadResponseAsync(socket);
            if (clientClosesFirst)
            {
                socket.Shutdown(SocketShutdown.Send);
            }

            // The server's FIN: no byte after the response, and no RST.
            Assert.Empty(await RawClient.ReadToFinAsync(socket, Timeout));
        }
    }

    /// <summary>Sends the request and reads the whole response (its body is the last thing on the wire).</summary>
    public static async Task SendRequestAndReadResponseAsync(Socket socket)
    {
        await socket.SendAsync(Request, SocketFlags.None, TestContext.Current.CancellationToken);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Timeout);
        var received = new List<byte>();
        var buffer = new byte[4096];
        while (!received.ToArray().AsSpan().EndsWith(SampleHost.PlaintextBody))
        {
            var read = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            Assert.True(read > 0, "the server closed before the response was complete");
            received.AddRange(buffer.AsSpan(0, read));
        }

        Assert.StartsWith("HTTP/1.1 200 OK", Encoding.ASCII.GetString(received.ToArray()), StringComparison.Ordinal);
    }
}
