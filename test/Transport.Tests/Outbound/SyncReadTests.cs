using System.Net;
using System.Net.Sockets;
using System.Text;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Outbound;

/// <summary>
/// Code after <c>await client.GetAsync(..., ResponseHeadersRead)</c> that reads the body synchronously
/// (StreamReader.ReadToEnd, XmlReader, Newtonsoft's JsonTextReader over the response stream) must get the
/// body when it arrives later. With the stream's connections scheduled inline, that code ran on the receive
/// loop's own stack, waiting for bytes only that loop could deliver: the request hung for good.
/// </summary>
public sealed class SyncReadTests
{
    [Fact]
    public async Task A_synchronous_read_of_a_body_that_arrives_after_the_headers_gets_it()
    {
        var ct = TestContext.Current.CancellationToken;
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var server = Task.Run(async () =>
        {
            using var socket = await listener.AcceptSocketAsync(ct);
            var buffer = new byte[4096];
            await socket.ReceiveAsync(buffer, ct);
            // The headers after the client has posted its read for them, the rest of the body later still.
            await Task.Delay(200, ct);
            await socket.SendAsync(Encoding.ASCII.GetBytes("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello"), ct);
            await Task.Delay(300, ct);
            await socket.SendAsync(Encoding.ASCII.GetBytes("world"), ct);
            socket.Shutdown(SocketShutdown.Send);
            while (await socket.ReceiveAsync(buffer, ct) > 0)
            {
            }
        }, ct);

        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) });
        var read = Task.Run(async () =>
        {
            using var response = await client.GetAsync($"http://127.0.0.1:{port}/", HttpCompletionOption.ResponseHeadersRead, ct);
            var stream = await response.Content.ReadAsStreamAsync(ct);
            using var reader = new StreamReader(stream);
#pragma warning disable CA1849 // The synchronous read is the point.
            return reader.ReadToEnd();
#pragma warning restore CA1849
        }, ct);

        Assert.Equal("helloworld", await read.WaitAsync(TimeSpan.FromSeconds(10), ct));
        await server.WaitAsync(TimeSpan.FromSeconds(10), ct);
    }
}
